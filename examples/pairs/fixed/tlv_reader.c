#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TLV_HDR_LEN 3

enum tlv_type {
    TLV_DEVICE_NAME = 0x01,
    TLV_FIRMWARE    = 0x02,
    TLV_SERIAL      = 0x03,
};

struct tlv_item {
    uint8_t        type;
    uint16_t       len;
    const uint8_t *value;
};

static uint16_t get_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

/* Returns 1 when an item was produced, 0 at end of buffer, -1 on malformed input. */
int tlv_next(const uint8_t *buf, size_t buflen, size_t *off, struct tlv_item *item)
{
    size_t pos = *off;

    if (pos >= buflen)
        return 0;
    if (buflen - pos < TLV_HDR_LEN)
        return -1;
    item->type = buf[pos];
    item->len = get_be16(buf + pos + 1);
    if (item->len > buflen - pos - TLV_HDR_LEN)
        return -1;
    item->value = buf + pos + TLV_HDR_LEN;
    *off = pos + TLV_HDR_LEN + item->len;
    return 1;
}

int tlv_get_string(const uint8_t *buf, size_t buflen, uint8_t type, char *dst, size_t dstlen)
{
    struct tlv_item item;
    size_t off = 0;
    size_t n;

    if (dstlen == 0)
        return -1;
    while (tlv_next(buf, buflen, &off, &item) == 1) {
        if (item.type != type)
            continue;
        n = item.len < dstlen - 1 ? item.len : dstlen - 1;
        memcpy(dst, item.value, n);
        dst[n] = '\0';
        return (int)n;
    }
    return -1;
}

int tlv_count(const uint8_t *buf, size_t buflen)
{
    struct tlv_item item;
    size_t off = 0;
    int count = 0;
    int rc;

    while ((rc = tlv_next(buf, buflen, &off, &item)) == 1)
        count++;
    return rc < 0 ? -1 : count;
}
