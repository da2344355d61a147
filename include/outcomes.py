"""The inventory's vocabulary: row outcomes and device states, named once."""

from __future__ import annotations

# Every data row of a manifest ends in exactly one of these (DESIGN.md, "Row outcome").
PROVISIONED = "provisioned"
FAILED = "failed"
QUARANTINED = "quarantined"
SKIPPED = "skipped"
OUTCOMES = (PROVISIONED, FAILED, QUARANTINED, SKIPPED)
# Accepted, not yet reported by AWS: only a dry run (or a run still going) has pending rows.
PENDING = "pending"

# Device states in the devices table. A claimed device is being provisioned by the run named in run_id;
# provisioned and claimed devices are never claimed by another run; failed ones may be.
CLAIMED = "claimed"
DEVICE_PROVISIONED = PROVISIONED
DEVICE_FAILED = FAILED
CLAIMABLE_STATES = (DEVICE_FAILED,)

# Reason codes of outcomes the pipeline decides after validation.
ALREADY_PROVISIONED = "already_provisioned"
CLAIMED_BY_RUN = "claimed_by_run"
KNOWN_UNDER_OTHER_NAME = "known_under_other_name"
RUN_ABANDONED = "run_abandoned"
PREFLIGHT_FAILED = "preflight_failed"
NO_REPORT_LINE = "NoReportLine"

# Run states in the runs table.
RUN_RUNNING = "running"
RUN_FINISHED = "finished"
RUN_FAILED = "failed"
RUN_ABANDONED_STATE = "abandoned"
