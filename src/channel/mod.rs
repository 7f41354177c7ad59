//! Carrier formats, one file per carrier. Each adapter turns a carrier's request into the phone and the new
//! input(s) of a conversation, and the engine's reply into the carrier's response. Kannel and Twilio SMS
//! adapters join Africa's Talking here later.

pub mod africastalking;
