#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

struct account {
    int  id;
    char email[128];
    char display_name[64];
    int  is_admin;
};

static void copy_column(char *dst, size_t dstlen, sqlite3_stmt *stmt, int col)
{
    const unsigned char *txt = sqlite3_column_text(stmt, col);

    snprintf(dst, dstlen, "%s", txt ? (const char *)txt : "");
}

static void fill_account(sqlite3_stmt *stmt, struct account *out)
{
    out->id = sqlite3_column_int(stmt, 0);
    copy_column(out->email, sizeof(out->email), stmt, 1);
    copy_column(out->display_name, sizeof(out->display_name), stmt, 2);
    out->is_admin = sqlite3_column_int(stmt, 3);
}

int account_by_id(sqlite3 *db, int id, struct account *out)
{
    sqlite3_stmt *stmt;
    int rc;

    if (sqlite3_prepare_v2(db, "SELECT id, email, display_name, is_admin FROM accounts WHERE id = ?1;",
                           -1, &stmt, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int(stmt, 1, id);
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        fill_account(stmt, out);
    sqlite3_finalize(stmt);
    return rc == SQLITE_ROW ? 0 : 1;
}

int account_by_email(sqlite3 *db, const char *email, struct account *out)
{
    sqlite3_stmt *stmt;
    int rc;

    if (sqlite3_prepare_v2(db, "SELECT id, email, display_name, is_admin FROM accounts WHERE email = ?1;",
                           -1, &stmt, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(stmt, 1, email, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        fill_account(stmt, out);
    sqlite3_finalize(stmt);
    return rc == SQLITE_ROW ? 0 : 1;
}
