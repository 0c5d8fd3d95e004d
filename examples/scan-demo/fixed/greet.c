#include <stdio.h>
#include <string.h>

void greet(const char *name)
{
    char buffer[32];
    snprintf(buffer, sizeof buffer, "Hello, %s", name);
    puts(buffer);
}
