/* emd_event.h: short names for the generated wire types, shared by every
 * module that handles events. */
#ifndef EMD_EVENT_H
#define EMD_EVENT_H

#include "buildless/service/v1/emit.pb-c.h"
#include "buildless/telemetry/telemetry.pb-c.h"
#include "emitd/v1/emitd.pb-c.h"
#include "google/protobuf/any.pb-c.h"

typedef Buildless__Service__V1__Event emd_event;           /* envelope */
typedef Buildless__Service__V1__EventID emd_event_id;
typedef Buildless__Telemetry__TelemetryEvent emd_tevent;   /* payload */
typedef Emitd__V1__Ack emd_ack;
typedef Emitd__V1__SpoolRecord emd_spool_record;
typedef Emitd__V1__SpoolRecordView emd_spool_record_view;
typedef Emitd__V1__DeadRecord emd_dead_record;

#define EMD_ID_MAX 64        /* longest TelemetryEvent.id */
#define EMD_TIMER_MAX 32     /* longest TelemetryEvent.timer */
#define EMD_TIMER_LEN 16     /* timers emitd makes */

#endif
