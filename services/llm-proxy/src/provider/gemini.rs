//! The gemini provider (being written).
