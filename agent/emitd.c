/* emitd.c: the daemon. Placeholder until the loop lands. */
#include <stdio.h>

#include "emd_err.h"

int main(void)
{
  printf("emitd %s\n", EMD_VERSION);
  return 0;
}
