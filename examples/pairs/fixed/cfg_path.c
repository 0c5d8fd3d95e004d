#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_ROOT      "/etc/appliance/profiles"
#define CFG_PATH_MAX  512
#define CFG_SIZE_MAX  (256 * 1024)

struct cfg_blob {
    char  *data;
    size_t len;
};

static int cfg_build_path(char *out, size_t outlen, const char *profile)
{
    int n;

    if (profile[0] == '\0' || profile[0] == '.' || strchr(profile, '/') != NULL)
        return -1;
    n = snprintf(out, outlen, "%s/%s.conf", CFG_ROOT, profile);
    if (n < 0 || (size_t)n >= outlen)
        return -1;
    return 0;
}

static int cfg_read_all(FILE *fp, struct cfg_blob *blob)
{
    long size;

    if (fseek(fp, 0, SEEK_END) != 0 || (size = ftell(fp)) < 0)
        return -1;
    if (size > CFG_SIZE_MAX)
        return -1;
    rewind(fp);
    blob->data = malloc((size_t)size + 1);
    if (blob->data == NULL)
        return -1;
    blob->len = fread(blob->data, 1, (size_t)size, fp);
    blob->data[blob->len] = '\0';
    return 0;
}

/* Loads <CFG_ROOT>/<profile>.conf; the profile name arrives from the admin UI. */
int cfg_load_profile(const char *profile, struct cfg_blob *blob)
{
    char path[CFG_PATH_MAX];
    FILE *fp;
    int rc;

    if (profile == NULL || blob == NULL)
        return -1;
    if (cfg_build_path(path, sizeof(path), profile) != 0)
        return -1;
    fp = fopen(path, "rb");
    if (fp == NULL)
        return -1;
    rc = cfg_read_all(fp, blob);
    fclose(fp);
    return rc;
}

void cfg_release(struct cfg_blob *blob)
{
    free(blob->data);
    blob->data = NULL;
    blob->len = 0;
}
