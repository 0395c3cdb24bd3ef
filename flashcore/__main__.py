"""`python -m flashcore`: print which backend serves which device, and why."""

import json

import flashcore

print(json.dumps(flashcore.info(), indent=2))
