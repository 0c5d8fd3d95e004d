#include <stdlib.h>
#include <time.h>
#include <unistd.h>

struct pooled_conn {
    int                 fd;
    time_t              last_used;
    struct pooled_conn *next;
};

struct conn_pool {
    struct pooled_conn *head;
    size_t              count;
    time_t              idle_limit;
};

void pool_init(struct conn_pool *pool, time_t idle_limit)
{
    pool->head = NULL;
    pool->count = 0;
    pool->idle_limit = idle_limit;
}

int pool_put(struct conn_pool *pool, int fd)
{
    struct pooled_conn *c = malloc(sizeof(*c));

    if (c == NULL)
        return -1;
    c->fd = fd;
    c->last_used = time(NULL);
    c->next = pool->head;
    pool->head = c;
    pool->count++;
    return 0;
}

int pool_take(struct conn_pool *pool)
{
    struct pooled_conn *c = pool->head;
    int fd;

    if (c == NULL)
        return -1;
    pool->head = c->next;
    pool->count--;
    fd = c->fd;
    free(c);
    return fd;
}

/* Closes connections that have been idle for longer than the pool's limit. */
size_t pool_reap_idle(struct conn_pool *pool, time_t now)
{
    struct pooled_conn *c, *prev = NULL;
    size_t closed = 0;

    for (c = pool->head; c != NULL; c = c->next) {
        if (now - c->last_used < pool->idle_limit) {
            prev = c;
            continue;
        }
        if (prev != NULL)
            prev->next = c->next;
        else
            pool->head = c->next;
        close(c->fd);
        free(c);
        pool->count--;
        closed++;
    }
    return closed;
}
