"""Service adapters: turn prepared contacts into a service's bulk requests, through its hook."""
