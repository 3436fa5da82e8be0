// The edge player's program and capture memories (cocotb_tests/edge_player.py), simulation only.
// Hand-written because an Amaranth Memory is emitted with an `initial` statement per word, which
// cost the 2x2 mesh model 40 s of elaboration and 164k lines of Verilog for 160k zeros. The
// testbench reads and writes `mem` through VPI, hence public.
module tessera_player_ram #(
    parameter WIDTH = 66,
    parameter DEPTH = 1024,
    parameter ABITS = 10
) (
    input  wire             clk,
    input  wire [ABITS-1:0] raddr,
    output wire [WIDTH-1:0] rdata,
    input  wire             we,
    input  wire [ABITS-1:0] waddr,
    input  wire [WIDTH-1:0] wdata
);
    reg [WIDTH-1:0] mem [0:DEPTH-1] /* verilator public_flat_rw */;
    assign rdata = mem[raddr];
    always @(posedge clk)
        if (we)
            mem[waddr] <= wdata;
endmodule
