"""Check scripts that run *inside* a test container (Debian's python3, standard library only).

tests/nspawn.py copies this folder to /checks in the container and a oneshot unit runs one script
per boot; each writes its findings as JSON to /checks/<name>.json for the test on the host.
"""
