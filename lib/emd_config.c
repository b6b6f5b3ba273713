/* placeholder until the config module lands */
#include "emd_config.h"
