/*
 * Native reference for the hashing benchmark: XXH3-64 (libxxhash, as Debian
 * ships it) over N bytes in memory, cut into 64 KiB segments, with T
 * threads each taking every T-th segment, R rounds. Prints the median
 * GiB/s as one line of JSON.
 *
 *   xxh3bench BYTES THREADS ROUNDS
 */
#define XXH_INLINE_ALL
#include <xxhash.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEGMENT 65536

static uint8_t *data;
static size_t bytes;
static int threads;
static volatile uint64_t sink;

struct job { int index; uint64_t acc; };

static void *run(void *arg) {
  struct job *job = arg;
  uint64_t acc = 0;
  for (size_t s = (size_t)job->index; s * SEGMENT < bytes; s += (size_t)threads) {
    size_t len = bytes - s * SEGMENT < SEGMENT ? bytes - s * SEGMENT : SEGMENT;
    acc ^= XXH3_64bits(data + s * SEGMENT, len);
  }
  job->acc = acc;
  return NULL;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: xxh3bench BYTES THREADS ROUNDS\n");
    return 2;
  }
  bytes = strtoull(argv[1], NULL, 10);
  threads = atoi(argv[2]);
  int rounds = atoi(argv[3]);
  if (bytes == 0 || threads < 1 || threads > 64 || rounds < 1 || rounds > 1000) {
    fprintf(stderr, "xxh3bench: bad arguments\n");
    return 2;
  }
  data = malloc(bytes);
  if (!data) {
    fprintf(stderr, "xxh3bench: cannot allocate %zu bytes\n", bytes);
    return 1;
  }
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    memcpy(data + i, &x, 8);
  }
  double *rates = calloc((size_t)rounds, sizeof(double));
  pthread_t tid[64];
  struct job jobs[64];
  for (int r = 0; r < rounds; r++) {
    double t0 = now();
    for (int t = 0; t < threads; t++) {
      jobs[t].index = t;
      pthread_create(&tid[t], NULL, run, &jobs[t]);
    }
    for (int t = 0; t < threads; t++) {
      pthread_join(tid[t], NULL);
      sink ^= jobs[t].acc;
    }
    rates[r] = (double)bytes / (1024.0 * 1024.0 * 1024.0) / (now() - t0);
  }
  qsort(rates, (size_t)rounds, sizeof(double), compare);
  printf("{\"gibPerSec\":%.3f,\"threads\":%d,\"bytes\":%zu,\"rounds\":%d}\n", rates[rounds / 2], threads, bytes, rounds);
  return 0;
}
