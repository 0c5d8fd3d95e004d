#include <stdio.h>
#include <string.h>

void greet(const char *name)
{
    char buffer[32];
    strcpy(buffer, "Hello, ");
    strcat(buffer, name);
    puts(buffer);
}
