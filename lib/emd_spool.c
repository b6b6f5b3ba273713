/* placeholder until the spool module lands */
#include "emd_spool.h"
