//! Config parsing: any bytes as a config file (with a rules file beside it) are loaded or
//! rejected with issues, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], &[u8])| {
    let (config, rules) = input;
    let dir = std::env::temp_dir().join(format!("crossfade-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("crossfade.toml");
    std::fs::write(&file, config).unwrap();
    std::fs::write(dir.join("rules.toml"), rules).unwrap();
    if let Err(crossfade::config::LoadError::Invalid(issues)) = crossfade::config::load(&file) {
        assert!(!issues.is_empty(), "a rejected config says why");
    }
});
