package crashrecord

// ToUnstructured is toUnstructured, for tests that spoil a record.
var ToUnstructured = toUnstructured
