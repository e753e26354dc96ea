"""What the services share: contracts, topics, statuses, settings, logging and the client factories."""
