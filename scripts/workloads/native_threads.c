/* Native allocation from T threads at once: each makes N malloc/free pairs (sizes 16..1024)
   through two native frames. Usage: native_threads T N */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static long pairs;

__attribute__((noinline)) static void *make_buffer(size_t size) {
    char *buffer = malloc(size);
    if (buffer) buffer[0] = 1;
    return buffer;
}

__attribute__((noinline)) static void *worker(void *arg) {
    long seed = (long)arg, sum = 0;
    for (long i = 0; i < pairs; i++) {
        char *buffer = make_buffer(16 + (size_t)((i * 7 + seed) % 64) * 16);
        sum += buffer ? buffer[0] : 0;
        free(buffer);
    }
    return (void *)sum;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    pairs = argc > 2 ? atol(argv[2]) : 1000000;
    pthread_t ids[64];
    if (threads < 1 || threads > 64) return 2;
    for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, worker, (void *)(long)t);
    long total = 0;
    for (int t = 0; t < threads; t++) {
        void *result;
        pthread_join(ids[t], &result);
        total += (long)result;
    }
    printf("%ld\n", total);
    return 0;
}
