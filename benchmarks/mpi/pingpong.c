/* OSU-style MPI micro-benchmarks for berth-bench suite: ping-pong latency and bandwidth between
 * ranks 0 and 1, and MPI_Allreduce latency over all ranks. The same binary runs natively and in
 * the container (bind-mounted). Prints one line of key=value pairs on rank 0.
 * Usage: pingpong [ITERATIONS]   (default 10000; the bandwidth test runs ITERATIONS/500 windows) */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LAT_BYTES 8
#define BW_BYTES (1 << 20)
#define BW_WINDOW 16

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size < 2) {
    if (rank == 0) fprintf(stderr, "pingpong: needs at least 2 ranks\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  long iters = argc > 1 ? atol(argv[1]) : 10000;
  if (iters < 10) iters = 10;
  long warm = iters / 10;
  char *buf = malloc(BW_BYTES * BW_WINDOW);
  memset(buf, rank + 1, BW_BYTES * BW_WINDOW);
  MPI_Status st;

  /* Latency: half the round trip of an 8-byte message. */
  double t0 = 0;
  for (long i = 0; i < warm + iters; i++) {
    if (i == warm) { MPI_Barrier(MPI_COMM_WORLD); t0 = MPI_Wtime(); }
    if (rank == 0) {
      MPI_Send(buf, LAT_BYTES, MPI_CHAR, 1, 1, MPI_COMM_WORLD);
      MPI_Recv(buf, LAT_BYTES, MPI_CHAR, 1, 1, MPI_COMM_WORLD, &st);
    } else if (rank == 1) {
      MPI_Recv(buf, LAT_BYTES, MPI_CHAR, 0, 1, MPI_COMM_WORLD, &st);
      MPI_Send(buf, LAT_BYTES, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
    }
  }
  double lat_us = (MPI_Wtime() - t0) * 1e6 / (2.0 * iters);

  /* Bandwidth: windows of non-blocking 1 MiB sends, acknowledged per window (osu_bw). */
  long bw_iters = iters / 500 < 20 ? 20 : iters / 500;
  MPI_Request req[BW_WINDOW];
  for (long i = 0; i < 2 + bw_iters; i++) {
    if (i == 2) { MPI_Barrier(MPI_COMM_WORLD); t0 = MPI_Wtime(); }
    if (rank == 0) {
      for (int w = 0; w < BW_WINDOW; w++)
        MPI_Isend(buf + (size_t)w * BW_BYTES, BW_BYTES, MPI_CHAR, 1, 2, MPI_COMM_WORLD, &req[w]);
      MPI_Waitall(BW_WINDOW, req, MPI_STATUSES_IGNORE);
      MPI_Recv(buf, 1, MPI_CHAR, 1, 3, MPI_COMM_WORLD, &st);
    } else if (rank == 1) {
      for (int w = 0; w < BW_WINDOW; w++)
        MPI_Irecv(buf + (size_t)w * BW_BYTES, BW_BYTES, MPI_CHAR, 0, 2, MPI_COMM_WORLD, &req[w]);
      MPI_Waitall(BW_WINDOW, req, MPI_STATUSES_IGNORE);
      MPI_Send(buf, 1, MPI_CHAR, 0, 3, MPI_COMM_WORLD);
    }
  }
  double bw_mbs = (double)BW_BYTES * BW_WINDOW * bw_iters / (MPI_Wtime() - t0) / 1e6;

  /* Allreduce of 8 doubles over all ranks. */
  double in[8], out[8];
  for (int k = 0; k < 8; k++) in[k] = rank + k;
  for (long i = 0; i < warm + iters; i++) {
    if (i == warm) { MPI_Barrier(MPI_COMM_WORLD); t0 = MPI_Wtime(); }
    MPI_Allreduce(in, out, 8, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  }
  double ar_us = (MPI_Wtime() - t0) * 1e6 / iters;
  double want = (double)size * (size - 1) / 2;
  int ok = out[0] == want;

  if (rank == 0) {
    char lib[256] = "";
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    while (maps && fgets(line, sizeof line, maps))
      if (strstr(line, "libmpi.so")) { sscanf(line, "%*s %*s %*s %*s %*s %255s", lib); break; }
    if (maps) fclose(maps);
    printf("latency_us=%.3f bandwidth_MBps=%.1f allreduce_us=%.3f ranks=%d check=%s libmpi=%s\n",
           lat_us, bw_mbs, ar_us, size, ok ? "ok" : "BAD", lib);
  }
  free(buf);
  MPI_Finalize();
  return ok ? 0 : 1;
}
