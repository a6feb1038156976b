"""How people drive the engine: user-action rules, the client, foreground runs (see runtime/__init__)."""
