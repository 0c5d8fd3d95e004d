#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define ARCHIVE_DIR "/var/backups/sites"

typedef struct {
    const char *siteRoot;   /* directory to archive */
    const char *siteName;   /* name entered when the site was created */
    time_t      startedAt;
} BackupJob;

static int buildArchivePath(const BackupJob *job, char *out, size_t outLen)
{
    struct tm tmv;
    char stamp[32];
    int n;

    if (localtime_r(&job->startedAt, &tmv) == NULL)
        return -1;
    strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tmv);
    n = snprintf(out, outLen, "%s/%s-%s.tar.gz", ARCHIVE_DIR, job->siteName, stamp);
    return (n < 0 || (size_t)n >= outLen) ? -1 : 0;
}

static int runArchiver(const BackupJob *job, const char *archivePath)
{
    char command[2048];
    int status;

    snprintf(command, sizeof(command), "tar -czf \"%s\" -C \"%s\" .",
             archivePath, job->siteRoot);
    status = system(command);
    if (status == -1 || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

int backupSite(const char *siteRoot, const char *siteName)
{
    BackupJob job;
    char archivePath[1024];
    int rc;

    job.siteRoot = siteRoot;
    job.siteName = siteName;
    job.startedAt = time(NULL);
    if (buildArchivePath(&job, archivePath, sizeof(archivePath)) != 0)
        return -1;
    rc = runArchiver(&job, archivePath);
    if (rc != 0)
        fprintf(stderr, "backup of %s failed (status %d)\n", siteName, rc);
    else
        printf("backup written to %s\n", archivePath);
    return rc;
}
