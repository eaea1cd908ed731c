/* MPI test program for berth: ranks report where they run, check an allreduce, and exchange a
 * message large enough that Open MPI's vader BTL uses single-copy (CMA) between ranks on a node. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void ns_id(const char *name, char *out, size_t n) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/ns/%s", name);
    ssize_t r = readlink(path, out, n - 1);
    out[r < 0 ? 0 : r] = 0;
}

/* The file this process mapped libmpi from: shows whose MPI library the rank runs with. */
static void libmpi_path(char *out, size_t n) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    snprintf(out, n, "none");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        char *p = strchr(line, '/');
        if (p && strstr(p, "/libmpi.so")) {
            p[strcspn(p, "\n")] = 0;
            snprintf(out, n, "%s", p);
            break;
        }
    }
    fclose(f);
}

static void os_name(char *out, size_t n) {
    FILE *f = fopen("/etc/os-release", "r");
    char line[256];
    snprintf(out, n, "unknown");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "PRETTY_NAME=", 12) == 0) {
            char *v = line + 12;
            v[strcspn(v, "\n")] = 0;
            if (*v == '"') { v++; v[strcspn(v, "\"")] = 0; }
            snprintf(out, n, "%s", v);
        }
    }
    fclose(f);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char host[256], mnt[64], user[64], os[128], lib[256];
    gethostname(host, sizeof host);
    ns_id("mnt", mnt, sizeof mnt);
    ns_id("user", user, sizeof user);
    os_name(os, sizeof os);
    libmpi_path(lib, sizeof lib);

    int sum = 0;
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int expect = size * (size - 1) / 2;

    /* 4 MiB ring exchange: above vader's single-copy threshold, so CMA is used on-node. */
    const int n = 1 << 20;
    int *sendbuf = malloc(n * sizeof(int)), *recvbuf = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) sendbuf[i] = rank * 7 + i;
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    MPI_Sendrecv(sendbuf, n, MPI_INT, next, 0, recvbuf, n, MPI_INT, prev, 0, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
    int ring_ok = 1;
    for (int i = 0; i < n; i++)
        if (recvbuf[i] != prev * 7 + i) { ring_ok = 0; break; }

    printf("rank %d/%d host=%s os=\"%s\" uid=%d mnt=%s user=%s allreduce=%s ring=%s libmpi=%s\n", rank,
           size, host, os, (int)getuid(), mnt, user, sum == expect ? "ok" : "BAD", ring_ok ? "ok" : "BAD", lib);
    fflush(stdout);
    MPI_Finalize();
    return (sum == expect && ring_ok) ? 0 : 1;
}
