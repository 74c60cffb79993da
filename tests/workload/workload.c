/*
 * The test workload: a tiny static program run as a container's only process.
 *
 *   workload MODE [ALLOC_MB]
 *
 * MODE says what SIGTERM does:
 *   exit      exit at once with code 0
 *   ignore    ignore SIGTERM (the stop's kill must end it)
 *   slow=MS   finish "cleaning up" for MS milliseconds, then exit 0
 *   spin      exit at once on SIGTERM, and keep one CPU busy meanwhile
 *   grow=MS   exit at once on SIGTERM, and MS milliseconds after start allocate memory without
 *             end, so that the kernel's OOM killer ends it under a memory limit
 *   once      the first run behaves as `exit`; every later start of the same container exits at
 *             once with code 3 (a crash at boot), told apart by a file the first run leaves in the
 *             container's own filesystem
 *   crash=N   the first N runs of the same container exit at once, run k with code 10 + k (a
 *             crash loop under a restart policy); later runs behave as `exit` (runs are counted
 *             in a file in the container's own filesystem)
 * Every other handled signal (SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2) exits at once with code
 * 64 + the signal's number, so a test can tell which signal arrived. Each signal received is
 * written to standard output as "signal N". ALLOC_MB megabytes are allocated and touched at start
 * so that memory figures are not trivial.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int slow_ms = -1;
static int grow_ms = -1;
static int spin = 0;
static int ignore_term = 0;

static void say(int sig) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "signal %d\n", sig);
    if (n > 0) {
        ssize_t w = write(1, buf, (size_t)n);
        (void)w;
    }
}

static void on_signal(int sig) {
    say(sig);
    if (sig == SIGTERM) {
        if (ignore_term) return;
        if (slow_ms > 0) {
            struct timespec ts = {slow_ms / 1000, (long)(slow_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        _exit(0);
    }
    _exit(64 + sig);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "exit";
    if (strcmp(mode, "ignore") == 0) {
        ignore_term = 1;
    } else if (strncmp(mode, "slow=", 5) == 0) {
        slow_ms = atoi(mode + 5);
    } else if (strcmp(mode, "spin") == 0) {
        spin = 1;
    } else if (strncmp(mode, "grow=", 5) == 0) {
        grow_ms = atoi(mode + 5);
    } else if (strcmp(mode, "once") == 0) {
        if (access("/booted", F_OK) == 0) return 3;
        FILE *f = fopen("/booted", "w");
        if (!f) {
            fprintf(stderr, "cannot write /booted\n");
            return 2;
        }
        fclose(f);
    } else if (strncmp(mode, "crash=", 6) == 0) {
        int crashes = atoi(mode + 6);
        int runs = 0;
        FILE *f = fopen("/runs", "r");
        if (f) {
            if (fscanf(f, "%d", &runs) != 1) runs = 0;
            fclose(f);
        }
        runs++;
        f = fopen("/runs", "w");
        if (!f) {
            fprintf(stderr, "cannot write /runs\n");
            return 2;
        }
        fprintf(f, "%d\n", runs);
        fclose(f);
        if (runs <= crashes) {
            printf("crash %d\n", runs);
            return 10 + runs;
        }
    } else if (strcmp(mode, "exit") != 0) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    int sigs[] = {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
    if (argc > 2) {
        size_t bytes = (size_t)atoi(argv[2]) * 1024 * 1024;
        char *p = malloc(bytes);
        if (p) memset(p, 1, bytes);
    }
    printf("ready\n");
    fflush(stdout);
    if (grow_ms >= 0) {
        struct timespec ts = {grow_ms / 1000, (long)(grow_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        for (;;) {
            char *p = malloc(1 << 20);
            if (p) memset(p, 1, 1 << 20);
        }
    }
    if (spin) {
        volatile unsigned long n = 0;
        for (;;) n++;
    }
    for (;;) pause();
}
