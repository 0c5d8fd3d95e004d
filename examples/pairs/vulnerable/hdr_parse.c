#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HOST_MAX   64
#define AGENT_MAX  128

typedef struct {
    char host[HOST_MAX];
    char user_agent[AGENT_MAX];
    long content_length;
    int  keep_alive;
} RequestHeaders;

static char *trim(char *s)
{
    char *end;

    while (*s == ' ' || *s == '\t')
        s++;
    end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        *--end = '\0';
    return s;
}

static void store_header(RequestHeaders *rh, const char *name, const char *value)
{
    if (strcasecmp(name, "Host") == 0)
        strcpy(rh->host, value);
    else if (strcasecmp(name, "User-Agent") == 0)
        strcpy(rh->user_agent, value);
    else if (strcasecmp(name, "Content-Length") == 0)
        rh->content_length = strtol(value, NULL, 10);
    else if (strcasecmp(name, "Connection") == 0)
        rh->keep_alive = strcasecmp(value, "keep-alive") == 0;
}

/* Parses the header block that follows the request line, modifying it in place. */
int parse_headers(char *block, RequestHeaders *rh)
{
    char *save = NULL;
    char *line, *colon;

    memset(rh, 0, sizeof(*rh));
    for (line = strtok_r(block, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        colon = strchr(line, ':');
        if (colon == NULL)
            return -1;
        *colon = '\0';
        store_header(rh, trim(line), trim(colon + 1));
    }
    return 0;
}
