"""What the three wings agree on: the messages between them (``protocol``), the queue's faces as
typed Protocols (``faces``), the typed client each caller holds (``queue_client``), and the decoded
upload shared through Ray's object store (``transfer``). Every wing may import it; it imports no wing."""
