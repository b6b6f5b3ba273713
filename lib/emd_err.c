/* emd_err.c: the error table of emd_err.h. */
#include "emd_err.h"

#include <string.h>

const char *emd_strerror(int err)
{
  switch (err) {
#define X(name, value, code, msg) case EMD_E##name: return msg;
    EMD_ERR_MAP(X)
#undef X
  }
  if (err < 0 && err > -1000)
    return strerror(-err);
  return err == 0 ? "success" : "unknown error";
}

const char *emd_errcode(int err)
{
  switch (err) {
#define X(name, value, code, msg) case EMD_E##name: return code;
    EMD_ERR_MAP(X)
#undef X
  }
  return err == 0 ? "ok" : "internal";
}
