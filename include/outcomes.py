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
# provisioned and claimed devices are never claimed by another run; failed and deleted ones may be (a
# deleted device is provisioned again like a new one).
CLAIMED = "claimed"
DEVICE_PROVISIONED = PROVISIONED
DEVICE_FAILED = FAILED
DEVICE_DELETED = "deleted"
CLAIMABLE_STATES = (DEVICE_FAILED, DEVICE_DELETED)

# Reason codes of outcomes the pipeline decides after validation.
ALREADY_PROVISIONED = "already_provisioned"
CLAIMED_BY_RUN = "claimed_by_run"
KNOWN_UNDER_OTHER_NAME = "known_under_other_name"
RUN_ABANDONED = "run_abandoned"
PREFLIGHT_FAILED = "preflight_failed"
NO_REPORT_LINE = "NoReportLine"
# The thing already exists in AWS IoT and the inventory has no record of it (a lost or restored inventory,
# a thing made by hand): provisioning it would merge a second certificate into it (include.drift).
EXISTS_IN_REGISTRY = "exists_in_registry"

# Lifecycle actions (manage_devices), and what the pipeline itself records in the same action log.
DEACTIVATE = "deactivate"
REVOKE = "revoke"
REACTIVATE = "reactivate"
DELETE = "delete"
REKEY = "rekey"
ACTIONS = (DEACTIVATE, REVOKE, REACTIVATE, DELETE, REKEY)
CLEAN_ORPHANS = "clean_orphans"  # what a failed bulk line left, removed after reconcile
REPAIR = "repair"  # the inventory updated from the registry by audit_drift
# A device's state in one run's action log (device_actions): started before its first change, then one
# of the others; a retried run skips every device whose state is final.
ACTION_STARTED = "started"
ACTION_DONE = "done"
ACTION_UNCHANGED = "unchanged"
ACTION_FAILED = "failed"
ACTION_PLANNED = "planned"  # a dry run: what would be done
FINAL_ACTION_STATES = (ACTION_DONE, ACTION_UNCHANGED, ACTION_FAILED, ACTION_PLANNED)

# Run states in the runs table.
RUN_RUNNING = "running"
RUN_FINISHED = "finished"
RUN_FAILED = "failed"
RUN_ABANDONED_STATE = "abandoned"
