#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t width;
    uint32_t height;
    uint32_t channels;
    uint8_t *pixels;
} Image;

static uint32_t read_u32_le(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

Image *image_alloc(uint32_t width, uint32_t height, uint32_t channels)
{
    Image *img;
    uint32_t total;

    if (width == 0 || height == 0 || channels == 0 || channels > 4)
        return NULL;
    total = width * height * channels;
    img = malloc(sizeof(*img));
    if (img == NULL)
        return NULL;
    img->pixels = malloc(total);
    if (img->pixels == NULL) {
        free(img);
        return NULL;
    }
    img->width = width;
    img->height = height;
    img->channels = channels;
    return img;
}

/* Layout: "RIMG", width, height, channels (u32 LE each), followed by the pixel rows. */
Image *image_decode(const uint8_t *buf, size_t len)
{
    Image *img;
    size_t stride;
    uint32_t y;

    if (len < 16 || memcmp(buf, "RIMG", 4) != 0)
        return NULL;
    img = image_alloc(read_u32_le(buf + 4), read_u32_le(buf + 8), read_u32_le(buf + 12));
    if (img == NULL)
        return NULL;
    stride = (size_t)img->width * img->channels;
    buf += 16;
    len -= 16;
    for (y = 0; y < img->height && len >= stride; y++) {
        memcpy(img->pixels + (size_t)y * stride, buf, stride);
        buf += stride;
        len -= stride;
    }
    return img;
}

void image_free(Image *img)
{
    if (img != NULL) {
        free(img->pixels);
        free(img);
    }
}
