# NOTE TO HELPERS (temporary, the lead removes it): read and follow /tmp/common.md before anything else.
