"""The steps of the call chain: one small class per step, each with ``__call__(call, call_next)``.

The order is decided in one place, ``gateway.assemble.make_gateway`` (``chain_steps``).
"""
