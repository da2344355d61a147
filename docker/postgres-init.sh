#!/bin/bash
# The inventory lives next to Airflow's metadata, in its own database (name from INVENTORY_DB).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${INVENTORY_DB:-inventory}\" OWNER \"$POSTGRES_USER\""
