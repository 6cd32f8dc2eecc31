"""The listener daemon: LISTEN/poll → claim → compute → platform → poll results → record."""
