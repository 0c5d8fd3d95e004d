#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t *data;
    size_t   cap;
    size_t   head;
    size_t   count;
} ring_t;

ring_t *ring_create(size_t cap)
{
    ring_t *r;

    if (cap == 0)
        return NULL;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->data = malloc(cap);
    if (r->data == NULL) {
        free(r);
        return NULL;
    }
    r->cap = cap;
    return r;
}

/* Appends n bytes received from the serial port. */
int ring_write(ring_t *r, const uint8_t *src, size_t n)
{
    size_t tail = (r->head + r->count) % r->cap;
    size_t first = r->cap - tail;

    if (n > r->cap - r->count)
        return -1;
    if (first > n)
        first = n;
    memcpy(r->data + tail, src, first);
    memcpy(r->data, src + first, n - first);
    r->count += n;
    return 0;
}

size_t ring_read(ring_t *r, uint8_t *dst, size_t n)
{
    size_t first;

    if (n > r->count)
        n = r->count;
    first = r->cap - r->head;
    if (first > n)
        first = n;
    memcpy(dst, r->data + r->head, first);
    memcpy(dst + first, r->data, n - first);
    r->head = (r->head + n) % r->cap;
    r->count -= n;
    return n;
}

void ring_destroy(ring_t *r)
{
    if (r != NULL) {
        free(r->data);
        free(r);
    }
}
