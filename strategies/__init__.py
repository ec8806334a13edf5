"""The AI service's Flower side: the ServerApp (``server_app``) and the AZSL Strategy.

The strategy talks to the owners (transport, delivery, roster, feedback sources) and hands
learning to :mod:`azsl_flower.service`; this package imports the library, never the
other way round.
"""
