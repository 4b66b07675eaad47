/* Runs a command and reports its peak resident size, for scripts/bench.
   Usage: launch RSS_FILE [NAME=VALUE…] -- COMMAND [ARG…]
   The assignments go into the child's environment only (LD_PRELOAD must reach the measured
   program, not this launcher). A child forked from a small launcher starts with a small
   resident size, which the kernel's peak (carried across exec) would otherwise inherit from a
   large parent such as the Python benchmark driver. Exits with the command's status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) return 125;
    int command = 2;
    while (command < argc && strcmp(argv[command], "--") != 0) command++;
    if (command + 1 >= argc) return 125;
    pid_t child = fork();
    if (child < 0) return 126;
    if (child == 0) {
        for (int i = 2; i < command; i++) putenv(argv[i]);
        execvp(argv[command + 1], &argv[command + 1]);
        _exit(127);
    }
    int status;
    struct rusage usage;
    if (wait4(child, &status, 0, &usage) < 0) return 126;
    FILE *out = fopen(argv[1], "w");
    if (out) {
        fprintf(out, "%ld\n", usage.ru_maxrss);
        fclose(out);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
