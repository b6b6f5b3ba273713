/* placeholder until the codec module lands */
#include "emd_codec.h"
