//! The rules a client's fields follow (protocol §1 and §2): message texts,
//! usernames, devices, passwords and display names. Each bound is in
//! `limits`.

use crate::error::{ApiError, ErrorCode};
use crate::limits::{
    DEVICE_BYTES_MAX, DISPLAY_NAME_CHARS_MAX, PASSWORD_BYTES_MAX, PASSWORD_CHARS_MIN, USERNAME_BYTES_MAX,
    USERNAME_BYTES_MIN,
};

/// Checks a message text against the contract: 1 to `max_chars` chars.
pub fn check_text(text: &str, max_chars: usize) -> Result<(), ApiError> {
    if text.is_empty() {
        return Err(ApiError::bad_request("text must not be empty"));
    }
    // Count chars only as far as needed to know the limit is passed.
    if text.len() > max_chars && text.chars().nth(max_chars).is_some() {
        return Err(ApiError::new(ErrorCode::MessageTooLong, format!("text is longer than {max_chars} chars")));
    }
    Ok(())
}

/// 3 to 32 of `a-z 0-9 _`.
pub fn valid_username(name: &str) -> bool {
    (USERNAME_BYTES_MIN..=USERNAME_BYTES_MAX).contains(&name.len())
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

/// 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn valid_device(device: &str) -> bool {
    (1..=DEVICE_BYTES_MAX).contains(&device.len())
        && device.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// At least `PASSWORD_CHARS_MIN` chars and at most `PASSWORD_BYTES_MAX` bytes.
pub fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < PASSWORD_CHARS_MIN || password.len() > PASSWORD_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "password must be at least {PASSWORD_CHARS_MIN} chars and at most {PASSWORD_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// 1 to `DISPLAY_NAME_CHARS_MAX` chars.
pub fn check_display_name(name: &str) -> Result<(), ApiError> {
    if (1..=DISPLAY_NAME_CHARS_MAX).contains(&name.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("display_name must be 1 to {DISPLAY_NAME_CHARS_MAX} chars")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_length_counts_chars_not_bytes() {
        assert!(check_text("ééé", 3).is_ok());
        assert_eq!(check_text("éééé", 3).unwrap_err().code, ErrorCode::MessageTooLong);
        assert_eq!(check_text("", 3).unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn usernames_and_devices_follow_the_contract() {
        for good in ["abc", "a_1", &"z".repeat(32)] {
            assert!(valid_username(good), "{good}");
        }
        for bad in ["ab", "Abc", "a-b", "a b", "é_abc", &"z".repeat(33)] {
            assert!(!valid_username(bad), "{bad}");
        }
        assert!(valid_device("Phone-1_x"));
        assert!(!valid_device("") && !valid_device("a/b") && !valid_device(&"d".repeat(65)));
    }

    #[test]
    fn passwords_and_display_names_have_bounds() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"p".repeat(PASSWORD_BYTES_MAX + 1)).is_err());
        assert!(check_display_name("Alice").is_ok());
        assert!(check_display_name("").is_err());
        assert!(check_display_name(&"n".repeat(DISPLAY_NAME_CHARS_MAX + 1)).is_err());
    }
}
