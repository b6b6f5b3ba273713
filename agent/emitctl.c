/* emitctl.c: the friendly client. Placeholder. */
#include <stdio.h>

int main(void)
{
  printf("emitctl %s\n", EMD_VERSION);
  return 0;
}
