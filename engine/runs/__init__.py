"""One run's life: its state changes (lifecycle), the facts that cause them, and its folder.

Below the runtime and tuning rooms (the tuning driver and the engine both change
run states, always through lifecycle.Lifecycle) and above the catalogue.
"""
