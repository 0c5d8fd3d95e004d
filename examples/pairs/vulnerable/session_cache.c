#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SESSION_SLOTS 256

struct session {
    char   user[32];
    char   token[65];
    time_t expires;
};

static struct session *slots[SESSION_SLOTS];

static unsigned slot_for(const char *token)
{
    unsigned h = 5381;

    while (*token)
        h = h * 33u + (unsigned char)*token++;
    return h % SESSION_SLOTS;
}

struct session *session_open(const char *user, const char *token, int ttl)
{
    unsigned idx = slot_for(token);
    struct session *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    snprintf(s->user, sizeof(s->user), "%s", user);
    snprintf(s->token, sizeof(s->token), "%s", token);
    s->expires = time(NULL) + ttl;
    free(slots[idx]);
    slots[idx] = s;
    return s;
}

struct session *session_find(const char *token)
{
    struct session *s = slots[slot_for(token)];

    if (s == NULL || strcmp(s->token, token) != 0)
        return NULL;
    if (s->expires < time(NULL))
        return NULL;
    return s;
}

int session_close(const char *token, FILE *audit)
{
    unsigned idx = slot_for(token);
    struct session *s = slots[idx];

    if (s == NULL || strcmp(s->token, token) != 0)
        return -1;
    slots[idx] = NULL;
    free(s);
    fprintf(audit, "logout user=%s token=%.8s...\n", s->user, s->token);
    return 0;
}
