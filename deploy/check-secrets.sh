#!/bin/sh
# Run by compose's one-shot `secrets-check` before anything else: refuse placeholder secrets.
# `${VAR:?}` in compose only checks that a value is set; `cp .env.example .env` would otherwise run
# with the example's passwords. Each required secret must be set, not a placeholder, 16+ characters.
status=0
for name in API_KEY MONGO_ROOT_PASSWORD MONGO_APP_PASSWORD MINIO_ROOT_PASSWORD MINIO_APP_PASSWORD GRAFANA_ADMIN_PASSWORD; do
  value=$(printenv "$name")
  case "$value" in
    "") echo "secrets-check: $name is not set in .env" >&2; status=1 ;;
    *change-me*|*changeme*|*example*|*placeholder*)
      echo "secrets-check: $name still has the example's placeholder value: set a real secret in .env" >&2; status=1 ;;
    *)
      if [ "${#value}" -lt 16 ]; then
        echo "secrets-check: $name is shorter than 16 characters" >&2; status=1
      fi ;;
  esac
done
[ "$status" -eq 0 ] && echo "secrets-check: every secret is set"
exit "$status"
