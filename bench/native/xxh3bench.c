/*
 * Native reference for the hashing benchmark: XXH3-64 from libxxhash (as
 * Debian's libxxhash-dev ships it) over BYTES bytes in memory, cut into
 * 64 KiB segments like a volume, with THREADS threads each taking one
 * contiguous run of segments, ROUNDS times. Prints the median GiB/s as one
 * line of JSON, so that bench/native.ts can read it.
 *
 *   xxh3bench BYTES THREADS ROUNDS
 *
 * XXH_INLINE_ALL compiles the hash into this file, so -march=native lets it
 * use the widest vectors the machine has: this is the best a native program
 * does, which is what the WebAssembly kernel is measured against.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEGMENT_BYTES 65536
#define THREADS_MAX 64
#define ROUNDS_MAX 1000

struct job {
  const uint8_t *data;
  size_t from; /* byte offsets, a multiple of SEGMENT_BYTES */
  size_t to;
  uint64_t folded; /* the xor of every hash, so the work cannot be optimized away */
};

static void *hash_segments(void *arg) {
  struct job *job = arg;
  uint64_t folded = 0;
  for (size_t at = job->from; at < job->to; at += SEGMENT_BYTES) {
    size_t length = job->to - at < SEGMENT_BYTES ? job->to - at : SEGMENT_BYTES;
    folded ^= XXH3_64bits(job->data + at, length);
  }
  job->folded = folded;
  return NULL;
}

static double seconds_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: xxh3bench BYTES THREADS ROUNDS\n");
    return 2;
  }
  size_t bytes = strtoull(argv[1], NULL, 10);
  int threads = atoi(argv[2]);
  int rounds = atoi(argv[3]);
  if (bytes == 0 || threads < 1 || threads > THREADS_MAX || rounds < 1 || rounds > ROUNDS_MAX) {
    fprintf(stderr, "xxh3bench: want BYTES > 0, THREADS 1 to %d, ROUNDS 1 to %d\n", THREADS_MAX, ROUNDS_MAX);
    return 2;
  }
  uint8_t *data = malloc(bytes);
  if (data == NULL) {
    fprintf(stderr, "xxh3bench: cannot allocate %zu bytes\n", bytes);
    return 1;
  }
  /* xorshift64: every byte written, so no page is first touched while timed. */
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < bytes; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    memcpy(data + i, &x, bytes - i < 8 ? bytes - i : 8);
  }

  /* Whole segments are shared out as evenly as they go; the last thread also takes the tail. */
  size_t segments = (bytes + SEGMENT_BYTES - 1) / SEGMENT_BYTES;
  struct job jobs[THREADS_MAX];
  pthread_t ids[THREADS_MAX];
  for (int t = 0; t < threads; t++) {
    jobs[t].data = data;
    jobs[t].from = segments * (size_t)t / (size_t)threads * SEGMENT_BYTES;
    jobs[t].to = t == threads - 1 ? bytes : segments * (size_t)(t + 1) / (size_t)threads * SEGMENT_BYTES;
  }

  double rates[ROUNDS_MAX];
  uint64_t folded = 0;
  for (int r = 0; r < rounds; r++) {
    double start = seconds_now();
    for (int t = 0; t < threads; t++) {
      if (pthread_create(&ids[t], NULL, hash_segments, &jobs[t]) != 0) {
        fprintf(stderr, "xxh3bench: cannot start thread %d\n", t);
        return 1;
      }
    }
    for (int t = 0; t < threads; t++) {
      pthread_join(ids[t], NULL);
      folded ^= jobs[t].folded;
    }
    rates[r] = (double)bytes / (1024.0 * 1024.0 * 1024.0) / (seconds_now() - start);
  }
  qsort(rates, (size_t)rounds, sizeof rates[0], compare_doubles);
  printf("{\"gibPerSec\":%.3f,\"threads\":%d,\"bytes\":%zu,\"rounds\":%d,\"folded\":\"%016llx\"}\n", rates[rounds / 2], threads, bytes,
         rounds, (unsigned long long)folded);
  free(data);
  return 0;
}
