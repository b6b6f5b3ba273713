/* emd_arena.c: see emd_arena.h. */
#include "emd_arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_CHUNK 16384
#define ARENA_ALIGN 16

struct emd_arena_chunk {
  struct emd_arena_chunk *next;  /* older chunk */
  size_t size;                   /* usable bytes in data */
  _Alignas(ARENA_ALIGN) unsigned char data[];
};

static struct emd_arena_chunk *chunk_new(size_t size)
{
  struct emd_arena_chunk *c;

  c = malloc(sizeof(*c) + size);
  if (c == NULL)
    return NULL;
  c->next = NULL;
  c->size = size;
  return c;
}

void *emd_arena_alloc(struct emd_arena *a, size_t n)
{
  struct emd_arena_chunk *c;
  size_t off, need;

  if (n > SIZE_MAX - 2 * ARENA_ALIGN)
    return NULL;
  off = (a->used + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
  if (a->head != NULL && off + n <= a->head->size) {
    a->used = off + n;
    a->total += n;
    return a->head->data + off;
  }
  need = n > ARENA_CHUNK ? n : ARENA_CHUNK;
  /* A big request gets a chunk of its own behind the head, so the space
   * left in the head stays usable. */
  c = chunk_new(need);
  if (c == NULL)
    return NULL;
  if (n > ARENA_CHUNK / 2 && a->head != NULL) {
    c->next = a->head->next;
    a->head->next = c;
  } else {
    c->next = a->head;
    a->head = c;
    a->used = n;
  }
  a->total += n;
  return c->data;
}

void *emd_arena_calloc(struct emd_arena *a, size_t n)
{
  void *p = emd_arena_alloc(a, n);

  if (p != NULL)
    memset(p, 0, n);
  return p;
}

char *emd_arena_strndup(struct emd_arena *a, const char *s, size_t n)
{
  char *p = emd_arena_alloc(a, n + 1);

  if (p == NULL)
    return NULL;
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

void emd_arena_reset(struct emd_arena *a)
{
  struct emd_arena_chunk *c, *next;

  if (a->head == NULL)
    return;
  /* Keep the newest chunk of the standard size; free the rest. */
  for (c = a->head->next; c != NULL; c = next) {
    next = c->next;
    free(c);
  }
  a->head->next = NULL;
  if (a->head->size != ARENA_CHUNK) {
    free(a->head);
    a->head = NULL;
  }
  a->used = 0;
  a->total = 0;
}

void emd_arena_free(struct emd_arena *a)
{
  struct emd_arena_chunk *c, *next;

  for (c = a->head; c != NULL; c = next) {
    next = c->next;
    free(c);
  }
  a->head = NULL;
  a->used = 0;
  a->total = 0;
}

static void *pb_alloc(void *data, size_t n)
{
  return emd_arena_alloc(data, n);
}

static void pb_free(void *data, void *p)
{
  (void)data;
  (void)p;
}

ProtobufCAllocator *emd_arena_pb(struct emd_arena *a)
{
  a->pb.alloc = pb_alloc;
  a->pb.free = pb_free;
  a->pb.allocator_data = a;
  return &a->pb;
}
