#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OP_HELLO, OP_PING, OP_PUBLISH, OP_SUBSCRIBE, OP_ACK, OP_BYE, OP_COUNT };

static const char *const OPCODE_NAMES[OP_COUNT] = {
    "HELLO", "PING", "PUBLISH", "SUBSCRIBE", "ACK", "BYE",
};

typedef struct {
    int  version;
    int  opcode;
    long seq;
    char topic[64];
} MsgHeader;

/* Header line format: "v=<version> op=<opcode> seq=<seq> topic=<topic>" */
int msg_parse_header(const char *line, MsgHeader *hdr)
{
    memset(hdr, 0, sizeof(*hdr));
    if (sscanf(line, "v=%d op=%d seq=%ld topic=%63s",
               &hdr->version, &hdr->opcode, &hdr->seq, hdr->topic) != 4)
        return -1;
    return hdr->version == 2 ? 0 : -1;
}

const char *msg_opcode_name(int opcode)
{
    if (opcode < 0 || opcode >= OP_COUNT)
        return "UNKNOWN";
    return OPCODE_NAMES[opcode];
}

int msg_describe(const MsgHeader *hdr, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "#%ld %s %s", hdr->seq,
                     msg_opcode_name(hdr->opcode), hdr->topic);

    return (n < 0 || (size_t)n >= outlen) ? -1 : 0;
}
