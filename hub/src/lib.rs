//! `ferry-hub` (issue 12): binds `user@hub` names to node ids, keeps the control connections of
//! nodes behind NATs, tells each its reflected address, coordinates hole punches and relays
//! the already-encrypted stream when no direct path works.
