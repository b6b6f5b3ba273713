/* emd_arena.h: a bump allocator for short-lived objects (one decoded event,
 * one group commit). Everything allocated is released at once by
 * emd_arena_reset() or emd_arena_free(). One thread at a time. */
#ifndef EMD_ARENA_H
#define EMD_ARENA_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

struct emd_arena_chunk;

/* Embed it in its owner; zero-initialised is an empty, valid arena. */
struct emd_arena {
  struct emd_arena_chunk *head;  /* chunk being filled; older ones follow */
  size_t used;                   /* bytes used in head */
  size_t total;                  /* bytes handed out since the last reset */
  ProtobufCAllocator pb;         /* adapter for protobuf-c (emd_arena_pb) */
};

/* Returns n bytes aligned for any type, or NULL when out of memory. The
 * memory is valid until the next reset or free. n 0 returns a valid
 * pointer. */
void *emd_arena_alloc(struct emd_arena *a, size_t n);

/* Like emd_arena_alloc, zero-filled. */
void *emd_arena_calloc(struct emd_arena *a, size_t n);

/* Copies n bytes of s into the arena and adds a NUL. */
char *emd_arena_strndup(struct emd_arena *a, const char *s, size_t n);

/* Forgets every allocation but keeps one chunk for reuse. */
void emd_arena_reset(struct emd_arena *a);

/* Releases every chunk; the arena is empty and valid again. */
void emd_arena_free(struct emd_arena *a);

/* A ProtobufCAllocator backed by this arena (free is a no-op), for
 * protobuf_c_message_unpack(). Valid while the arena lives. */
ProtobufCAllocator *emd_arena_pb(struct emd_arena *a);

#endif
