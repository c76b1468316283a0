//! Gmail multipart batch endpoint (placeholder).
