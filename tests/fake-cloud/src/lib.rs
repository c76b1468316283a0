//! Cloud emulator for tests: Microsoft Graph, Gmail and both OAuth servers.
//! Placeholder until the emulator issue lands.
