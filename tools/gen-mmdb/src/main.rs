//! `gen-mmdb IN.csv OUT.mmdb`: compile a GeoIP CSV table into a GeoIP2-City layout `.mmdb`
//! (see the library docs for the columns). Used to regenerate `geoip/test-city.mmdb`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: gen-mmdb IN.csv OUT.mmdb");
        return ExitCode::from(2);
    };
    match run(input, output) {
        Ok(len) => {
            println!("wrote {output} ({len} bytes)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-mmdb: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(input: &str, output: &str) -> Result<usize, String> {
    let csv = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let bytes = gen_mmdb::build(&csv).map_err(|e| format!("{input}: {e}"))?;
    std::fs::write(output, &bytes).map_err(|e| format!("{output}: {e}"))?;
    Ok(bytes.len())
}
