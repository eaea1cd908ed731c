/* Installed setuid-root in the test image: prints the ids it runs with. Inside a berth container
 * it must print the caller's ids (nosuid mount and no_new_privs keep setuid from working). */
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("ruid=%d euid=%d\n", (int)getuid(), (int)geteuid());
    return 0;
}
