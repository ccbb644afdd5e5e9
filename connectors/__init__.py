"""Sources, sinks, dead-letter stores and checkpoint stores, one package per service."""
